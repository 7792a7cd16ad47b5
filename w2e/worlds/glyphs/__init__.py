"""The glyph world: characters of many scripts rendered from Debian font packages."""
