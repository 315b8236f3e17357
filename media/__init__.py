"""Frames and files in, frames and files out: images and videos decoded and checked, the
clip runner. No HTTP and no job store: the command, the service's jobs and routes, live mode
and the worker all call it. Imports `models/`; never `service/` or `cli/`."""
