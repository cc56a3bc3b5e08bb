"""A run folder and what reads it: the files and their schema, and `Run`/`load` to evaluate and predict."""
