"""Fine-tuning: LoRA adapters (lora.py) and instruction data with assistant-only loss masks (chat_data.py); the run
(config.py: FinetuneConfig; run.py: `finetune(cfg)`, on the trainer), behind `modernlm finetune`."""
