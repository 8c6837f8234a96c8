"""The REST paths, one module per resource; each route is one ``BatchService`` call."""
