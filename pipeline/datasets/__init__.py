"""Source adapters: each dataset's native annotation files -> rows of the samples table (and, through
its videos, clip requests). One module per dataset; `registry` maps names to adapters, `common` holds
the shared validation, `mixture` reads several sources for one caching job."""
