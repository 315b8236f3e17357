"""Video jobs: the store on disk (`store`), the one job function (`run`), and the runner inside
the service process (`local`)."""
