{
  "targets": [
    {
      "target_name": "strata_native",
      "sources": ["seek.c", "copy.c", "extract.c", "inflate.c", "dirplus.c", "heap.c", "fuseread.c"],
      "cflags": ["-O2", "-Wall"]
    }
  ]
}
