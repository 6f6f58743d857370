"""Sources layer: the HTTP client, auth kinds, pagination kinds, the adapter base and vendor
discovery. Knows vendors' HTTP contracts; never sees the store or business rules."""
