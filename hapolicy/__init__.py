"""hapolicy: high availability, weighted load balancing and a fallback answer for Postfix
policy delegation services."""

__version__ = "2.0.0"
