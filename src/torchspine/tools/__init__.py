"""Tools: profiling (params, multiply-adds), and later export, conversion, drawing."""
