"""talkinghead client: Triton client, server launcher and the `talkinghead` CLI."""
