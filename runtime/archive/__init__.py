"""The embedding archive: embed field audio once into a perch-hoplite database, then search, label and train probes
on the stored vectors without running the backbone again. Torch-free (numpy, sqlite3, usearch, onnxruntime)."""
