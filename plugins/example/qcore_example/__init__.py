"""qcore-plugin-example: round-to-nearest int8 per output channel (the plugin tutorial)."""
