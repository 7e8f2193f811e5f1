"""advorch."""
