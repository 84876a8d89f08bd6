"""Web page (gradio): generate from text + painted mask + sketch + sliders; edit an uploaded photo."""
