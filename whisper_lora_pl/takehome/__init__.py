"""What users take home: export (adapter, merged model, CTranslate2), transcribe and the web page. Imports data,
decoding and the model; never training."""
