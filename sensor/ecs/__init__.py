"""Stage 4, Elastic Common Schema: builds each document from the model (builder.py) and encodes it to bytes
(encoding.py), which every output writes."""
