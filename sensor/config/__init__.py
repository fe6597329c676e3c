"""The bottom layer, imported by every stage and importing none: the configuration (settings.py: `Config`, its
loading and rendering), its option table (options.py), value parsers (parsing.py) and the stages' typed sections
(sections.py); secret handling (credentials.py) and the rules every file the sensor writes follows (statefiles.py)."""
