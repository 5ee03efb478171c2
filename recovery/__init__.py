"""Factory restore and everything on the RECOVERY volume: the image store, history, layout."""
