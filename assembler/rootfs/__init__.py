"""The rootfs stage: base bootstrap, engine build context, downloads, flattening and the layer index.

Kept free of imports so that importing one module of the stage does not import the others.
"""
