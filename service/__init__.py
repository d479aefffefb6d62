"""The online service: FastAPI app, routes, schemas and the web page."""
