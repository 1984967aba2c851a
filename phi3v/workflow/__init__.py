"""The workflow's planning: config resolution, the run matrix and job resources."""
