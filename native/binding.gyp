{
  "variables": {
    "zstd_lib%": "<!(node -p \"try { require('path').join(require('path').dirname(require.resolve('zstd-napi/package.json')), 'deps', 'zstd', 'lib') } catch { '' }\")"
  },
  "targets": [
    {
      "target_name": "strata_native",
      "sources": ["seek.c", "copy.c", "extract.c", "inflate.c", "dirplus.c", "heap.c", "fuseread.c"],
      "cflags": ["-O2", "-Wall", "-fvisibility=hidden"],
      "conditions": [
        ["zstd_lib!='' and zstd_lib!='none'", {
          "sources": ["zstd.c"],
          "dependencies": ["strata_zstd"],
          "include_dirs": ["<(zstd_lib)"],
          "defines": ["STRATA_ZSTD", "ZSTDLIB_VISIBLE=", "ZSTDERRORLIB_VISIBLE="]
        }]
      ]
    }
  ],
  "conditions": [
    ["zstd_lib!='' and zstd_lib!='none'", {
      "targets": [
        {
          "target_name": "strata_zstd",
          "type": "static_library",
          "sources": ["zstd-lib.c"],
          "include_dirs": ["<(zstd_lib)"],
          "cflags": ["-O3", "-fvisibility=hidden"],
          "defines": ["XXH_NAMESPACE=ZSTD_", "ZSTDLIB_VISIBLE=", "ZSTDERRORLIB_VISIBLE=", "ZSTD_NO_TRACE"]
        }
      ]
    }]
  ]
}
