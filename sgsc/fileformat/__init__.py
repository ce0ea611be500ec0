"""The packed file: bit-packing (``bitpack``), entropy coding (``entropy``), the container
and its bounded loader (``export``), the architectures a file can name (``registry``) and
the one way files are written (``atomic``)."""
