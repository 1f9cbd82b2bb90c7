"""The one gate for everything that comes from outside: bounds (`limits`), bounded reads and
strict JSON (`files`), typed models of every external document (`models`), output directory
rules (`outputs`) and CLI number bounds (`cli`). docs/bad-inputs.md lists what each input gets."""
