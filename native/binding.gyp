{
  "targets": [
    {
      "target_name": "strata_native",
      "sources": ["seek.c", "copy.c"],
      "cflags": ["-O2", "-Wall"]
    }
  ]
}
