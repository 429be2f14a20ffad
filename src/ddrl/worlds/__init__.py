"""Built-in worlds: small procedural tasks that run on a laptop CPU."""
