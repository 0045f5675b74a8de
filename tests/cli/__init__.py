"""The command lines (sparsebench/__main__.py): end-to-end runs as a user types them."""
