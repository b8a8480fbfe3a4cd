"""Exchanges with policy services: connections, idle connections, addresses."""
