"""Tables and figures, in one paper style, byte-identical on rerun."""
