"""The local provider: host processes in a private workspace, isolated by namespaces (bubblewrap)."""
