"""Pictures and videos in and out, and the faces in them: detection, tracking, crops, paste-back."""
