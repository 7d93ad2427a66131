"""``python train.py fit|validate|test|predict --config configs/....yaml``: see README.md."""

if __name__ == "__main__":  # DataLoader workers re-import this file: they must not run the CLI
    from whisper_lora_pl.console import quiet_libraries
    from whisper_lora_pl.data.workers import start_worker_server

    quiet_libraries()  # before the imports below: bitsandbytes logs a notice when peft imports it

    start_worker_server()  # before the heavy imports: the workers' server imports on another core meanwhile
    from whisper_lora_pl.training.cli import main

    main()
