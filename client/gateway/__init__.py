"""`talkinghead gateway`: the HTTP delivery service in front of tritonserver (see app.py for the API)."""
