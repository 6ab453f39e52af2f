"""The top layer, course support: exercise checkers (one module per notebook), widgets and plots."""
