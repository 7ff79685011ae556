"""The main job: configuration, building objects from it, the pipeline, run directories and reports."""
