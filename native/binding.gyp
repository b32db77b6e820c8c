{
  "targets": [
    {
      "target_name": "strata_native",
      "sources": ["seek.c"],
      "cflags": ["-O2", "-Wall"]
    }
  ]
}
