"""The man pages' parts: their fixed texts and the roff they are written in (manpage.py assembles
the pages)."""
