"""Kiln's shared core: the parts both halves of Kiln rely on.

The appliance-side packages (initramfs, provision, recovery, erase) build on this package;
the server imports only the image format and the data contracts from it. Nothing here
imports from those packages.
"""
