"""The build driver: command line, pipeline order, build folder, report, summary and verdict."""
