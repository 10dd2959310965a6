"""The spec-aware judge: rubric (pure prompt rendering and verdict parsing), service, client."""
