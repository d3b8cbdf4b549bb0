"""The only torch package: model runner, KV export/import, sampling, and an emulated engine."""
