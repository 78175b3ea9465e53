"""Payment rules without I/O."""
