"""The bottom layer, imported by every stage and importing none: the typed configuration and its sections
(settings.py), secret handling (credentials.py) and the rules every file the sensor writes follows (statefiles.py)."""
