"""The Safety-Net Data Hub (兜底保障数据枢纽). Its layers, in the order the data flows (each imports only
from those before it; `.importlinter`, checked by `make lint`): `schemas` (contracts) →
`safetynet.core` → `connectors` → `safetynet.intake` → `safetynet.build` → `quality` →
`safetynet.publish` → the app (`safetynet.cli`, `safetynet.review`, `safetynet.orchestration`,
`safetynet.pipeline`, `safetynet.verify`) → `dags`. `safetynet.demo` is outside them."""
