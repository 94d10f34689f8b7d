"""Fine-tuning: LoRA adapters (lora.py) and instruction data with assistant-only loss masks (chat_data.py)."""
