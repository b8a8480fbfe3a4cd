"""The man pages' fixed texts and their roff (manpage.py assembles the pages)."""
