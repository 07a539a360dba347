"""Sub-commands of the bgremove command line, one module each."""
