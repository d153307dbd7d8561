"""From changed rows to a sink write: plan what to embed, embed it, settle the outcome."""
