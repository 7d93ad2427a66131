from whisper_lora_pl.cli import main

main()
