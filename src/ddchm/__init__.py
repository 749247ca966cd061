"""ddchm: the DDC Helmholtz machine."""
