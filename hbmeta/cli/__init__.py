"""The ``hbmeta`` command line: parser, commands and reading users' files."""
