"""Training as a service under the public API: service.py runs a config to a finished run, package.py
writes its model package."""
