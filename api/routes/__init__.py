"""One module per resource: jobs, graphs (queries on a job's graph), catalog, health."""
