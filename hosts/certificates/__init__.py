"""The certificate store: X.509 material for qemu+tls:// connections and TLS migrations."""
